"""broadcast: a one-to-many live broadcasting server (WHIP in, WHEP out)."""

__version__ = "0.1.0"
