import threading

from ltseg.evaluation import parallel


def _pid(_):
    import os
    return os.getpid()


def test_parallel_map_forks_only_when_single_threaded():
    import os
    if threading.active_count() == 1:
        assert any(p != os.getpid() for p in parallel.parallel_map(_pid, range(4), 2))
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert parallel.parallel_map(_pid, range(4), 2) == [os.getpid()] * 4
    finally:
        stop.set()
        t.join()
