"""The Discord front end: a discord.py Bot, one cog per feature, streamed replies."""
