"""Storage: the database engine, the schema every table belongs to, migrations at start-up."""
