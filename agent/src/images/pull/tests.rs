//! Unit tests of the puller that need no registry.
