"""mediabot: a media and entertainment assistant for Discord and the terminal."""

BOT_NAME = "mediabot"
