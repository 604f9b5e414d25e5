"""The mount's lifecycle: checks, daemon, serving, final flush, and the process around them.

``lifecycle`` serves one mount in the event loop and ``daemon`` runs it as a
process; both import pyfuse3, so this package imports neither: ``notify``
and ``logsetup`` are imported by commands that must not load pyfuse3. The
control channel's names live with the filesystem that answers them
(``cosencfs.fs.control``); process hardening, which every key-holding
command uses, is ``cosencfs.hardening``.
"""
