"""Shared fixtures: the Firestore emulator (one per test session), a fresh project per
test so tests never see each other's documents, and both stores for contract tests."""
from __future__ import annotations

import itertools
import os

import pytest

from emulator import FirestoreEmulator  # tests/ is on sys.path through rootdir conftest

_projects = itertools.count()


@pytest.fixture(scope="session")
def firestore_emulator():
    emulator = FirestoreEmulator().start()
    previous = os.environ.get("FIRESTORE_EMULATOR_HOST")
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    yield emulator
    emulator.stop()
    if previous is None:
        os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
    else:
        os.environ["FIRESTORE_EMULATOR_HOST"] = previous


@pytest.fixture
def firestore_project(firestore_emulator, request):
    """A project id no other test uses: an empty database."""
    return f"test-{os.getpid()}-{next(_projects)}"
