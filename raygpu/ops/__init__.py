"""The operations the CLI and the head's admin API both run: deploy and roll out, placement and
capacity, tokens, usage and bills, logs, doctor, and the JSON contracts they answer with."""
