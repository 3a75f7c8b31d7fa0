"""How an API key is stored: only its SHA-256 ever leaves the hands of its holder.

`python -m services.core.api_keys NAME SCOPES` makes a new key: it prints the key (give
it to the client) and a `JOBRUNNER_API_KEYS=...` line for the API, ready for an `.env`
file (compose reads it) or a shell's `export`. Several keys: join their entries with
commas. It needs nothing but Python's standard library, so it runs before any install.
"""

import hashlib
import secrets
import sys


def key_digest(secret: str) -> bytes:
    """The SHA-256 of a key, which is all the API ever holds of it."""
    return hashlib.sha256(secret.encode()).digest()


def hash_key(secret: str) -> str:
    """What goes into JOBRUNNER_API_KEYS for a key: its SHA-256, hex."""
    return key_digest(secret).hex()


def new_key() -> str:
    return secrets.token_urlsafe(24)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: python -m services.core.api_keys NAME SCOPES   (SCOPES like read+submit)")
    name, scopes = sys.argv[1:]
    key = new_key()
    print(f"key (for the client, keep it secret): {key}")
    print("for the API (a line of .env, or export it):")
    print(f"JOBRUNNER_API_KEYS={name}:{scopes}:{hash_key(key)}")


if __name__ == "__main__":
    main()
