"""`make bench`: the project's conversion chain timed beside its yardsticks, on the same data, in one run.

Modules: ``run`` (the command), ``data`` (the series and its compressed copies), ``yardsticks`` (the
floor and a plain pydicom + Pillow loop, written here), ``contenders`` (what is timed), ``measure``
(one child process: wall, CPU, peak RSS), ``stages`` (where a slice's time goes) and ``report``.
"""
