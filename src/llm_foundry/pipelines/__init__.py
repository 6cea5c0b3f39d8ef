"""Orchestrations over the library: the chat pipeline (speedrun) strings the stages together."""
