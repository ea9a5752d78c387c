"""CSM as an HTTP speech server (OpenAI's `/v1/audio/speech`, plus CSM's context and codes): `python -m
assistant.tts.server --model DIR`. `wire.py` holds the formats the server and `assistant.tts.remote` share."""
