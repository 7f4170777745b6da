"""Whisper (OpenAI's, read from a CTranslate2 folder): the adapter and its decoder sites, weights, tokens, log-mel front end."""
