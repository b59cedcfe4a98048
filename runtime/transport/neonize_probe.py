"""Can this machine load neonize's Go library? (`wasync doctor`; transport code only
may import neonize.)"""
from __future__ import annotations


def load_neonize_version() -> str:
    """The version the Go library reports; raises if it cannot be loaded. Loads the
    library, so call it only where the process may keep it (doctor, the daemon)."""
    from neonize._binder import load_goneonize

    return load_goneonize().GetVersion().decode()
