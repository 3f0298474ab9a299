"""lib/utils/processes.py: a process that started another is watched, and its end noticed, however it ends."""

import subprocess
import threading

from lib.utils.processes import watch_parent


def test_the_end_of_a_watched_process_that_is_not_this_ones_parent_is_noticed_before_it_is_reaped():
    # Loader workers started through a go-between (the forkserver start method) have it, not the process that
    # iterates their loader, as parent; that process, killed, is a zombie until its own parent reaps it.
    watched = subprocess.Popen(["sleep", "60"])
    ended = threading.Event()
    try:
        assert watch_parent(ended.set, parent=watched.pid, poll_s=0.05) == watched.pid
        assert not ended.wait(0.5)
        watched.kill()  # not reaped (no wait() yet): a zombie
        assert ended.wait(5)
    finally:
        watched.kill()
        watched.wait()
