"""Test helpers: installing external tools (Helm, kinesalite) and starting them for tests."""
