"""CRM adapters (Bitrix24, amoCRM/Kommo, SQL, demo) behind one small port.

Not built yet: they arrive with the CRM issue. The package exists so the layout is the one
the architecture notes describe; nothing imports it today.
"""
