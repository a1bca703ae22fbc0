"""The Telegram channel: rendering answers and texts into messages Telegram accepts."""
