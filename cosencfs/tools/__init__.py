"""Bucket-wide tools: walk every object under a prefix to check it (fsck) or rotate its key (rekey).

``walk`` is the bounded, paged walk both share; ``progress`` is how a run
shows itself (a bar on a terminal, log lines otherwise) and what it cost;
``bucket`` opens and checks the bucket the settings name (the mount uses it too).
"""
