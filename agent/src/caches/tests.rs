//! Unit tests of image caches.
