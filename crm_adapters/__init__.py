"""CRM adapters behind one small port (``base``): Bitrix24, amoCRM/Kommo, the company's own SQL
database (read-only mapped queries) and the demo CRM, plus retries and a circuit breaker
(``resilience``) that the composition root puts in front of whichever is configured."""
