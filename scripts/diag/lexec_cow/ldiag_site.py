
# ---- lexec diag (appended to the harness's sitecustomize; diagnostics only) ----
_ldiag = os.environ.get("MEMSERIES_LDIAG") or ""
if _ldiag:
    import gc as _lgc, sys as _lsys, threading as _lth, time as _ltime, collections as _lcol

    def _ldiag_write(name, text):
        try:
            with open(os.path.join(_ldiag, name), "w") as f:
                f.write(text)
        except OSError:
            pass

    def _ldiag_title():
        try:
            with open("/proc/self/cmdline", "rb") as f:
                return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            return "?"

    def _ldiag_after_fork():
        pid = os.getpid()
        _ldiag_write("fork-%d.txt" % pid, "%d %d %.2f\n" % (pid, os.getppid(), _ltime.time())
                     + "\n".join(sorted(_lsys.modules)) + "\n")

        def loop():
            n = 0
            while True:
                _ltime.sleep(10)
                n += 1
                _lgc.collect()
                objs = _lgc.get_objects()
                types = _lcol.Counter(type(o).__qualname__ for o in objs)
                del objs
                _ldiag_write("state-%d.txt" % pid, "\n".join([
                    "title " + _ldiag_title(),
                    "n %d wall %.2f" % (n, _ltime.time()),
                    "tracked %d frozen %d blocks %d threads %s" % (
                        sum(types.values()), _lgc.get_freeze_count(), _lsys.getallocatedblocks(),
                        [t.name for t in _lth.enumerate()]),
                    "types " + " ".join("%s=%d" % kv for kv in types.most_common(40)),
                    "--modules",
                ] + sorted(_lsys.modules)) + "\n")

        _lth.Thread(target=loop, name="ldiag", daemon=True).start()

    os.register_at_fork(after_in_child=_ldiag_after_fork)
