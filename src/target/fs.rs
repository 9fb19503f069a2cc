//! Folder target (written elsewhere).
