# appended to the harness's memseries_celery module (diagnostics only): where a pool process's private pages come from
if _LOG_DIR and "_memseries_main_pid" in globals() and os.environ.get("MEMSERIES_DIAG"):
    import array as _array
    import json as _json
    import struct as _struct

    _PAGE = 4096

    def _diag_ranges(pid):
        out = []
        with open("/proc/%d/maps" % pid) as f:
            for line in f:
                parts = line.split()
                a, b = (int(x, 16) for x in parts[0].split("-"))
                if "w" not in parts[1]:
                    continue
                out.append((a, b, parts[5] if len(parts) > 5 else ""))
        return out

    def _diag_pagemap(pid, ranges):
        fd = os.open("/proc/%d/pagemap" % pid, os.O_RDONLY)
        try:
            res = []
            for a, b, name in ranges:
                arr = _array.array("Q")
                arr.frombytes(os.pread(fd, (b - a) // _PAGE * 8, a // _PAGE * 8))
                res.append((a, b, name, arr))
            return res
        finally:
            os.close(fd)

    def _diag_dump(path, maps):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            for a, b, name, arr in maps:
                n = name.encode()
                os.write(fd, _struct.pack("QQI", a, b, len(n)) + n + arr.tobytes())
        finally:
            os.close(fd)

    def _diag_load(path):
        with open(path, "rb") as f:
            data = f.read()
        out, i = [], 0
        while i < len(data):
            a, b, ln = _struct.unpack_from("QQI", data, i)
            i += 20
            name = data[i : i + ln].decode()
            i += ln
            n = (b - a) // _PAGE * 8
            arr = _array.array("Q")
            arr.frombytes(data[i : i + n])
            i += n
            out.append((a, b, name, arr))
        return out

    def _diag_after_fork():
        if os.getppid() != _memseries_main_pid:
            return
        _diag_dump(os.path.join(_LOG_DIR, "diagfork-%d" % os.getpid()), _diag_pagemap(os.getpid(), _diag_ranges(os.getpid())))

    os.register_at_fork(after_in_child=_diag_after_fork)

    from celery.signals import task_postrun as _task_postrun

    _diag_ntasks = [0]

    @_task_postrun.connect(weak=False)
    def _diag_postrun(**kwargs):
        if os.environ.get("MEMSERIES_DIAG") != "full":
            return
        _diag_ntasks[0] += 1
        if _diag_ntasks[0] not in (1, 2, 3, 5, 10, 20, 40, 80, 160):
            return  # a long-lived pool process (autoscale): analysed after these tasks only
        try:
            _diag_analyse()
        except Exception as e:  # diagnostics only
            _log("diagerr-%d" % os.getpid(), repr(e) + "\n")

    def _diag_analyse():
        me, main = os.getpid(), os.getppid()
        uss = _uss()
        cur = _diag_pagemap(me, _diag_ranges(me))
        mainmap = _diag_pagemap(main, _diag_ranges(main))
        forkmap = _diag_load(os.path.join(_LOG_DIR, "diagfork-%d" % me))
        fork_pfn = {}
        for a, b, name, arr in forkmap:
            for k, e in enumerate(arr):
                if e >> 63:
                    fork_pfn[a // _PAGE + k] = e & ((1 << 55) - 1)
        main_pfn = {}
        for a, b, name, arr in mainmap:
            for k, e in enumerate(arr):
                if e >> 63:
                    main_pfn[a // _PAGE + k] = e & ((1 << 55) - 1)
        cats = {}
        child_written = []  # page numbers COWed by the child, original still in main
        for a, b, name, arr in cur:
            label = name if name.startswith("[") or not name else ("so/file" if "/" in name else name)
            for k, e in enumerate(arr):
                if not e >> 63:
                    continue
                excl = (e >> 56) & 1
                if not excl:
                    continue
                pn = a // _PAGE + k
                pfn = e & ((1 << 55) - 1)
                if pn not in fork_pfn:
                    kind = "new page"
                elif fork_pfn[pn] == pfn:
                    kind = "kept original (others wrote)"
                else:
                    kind = "child copied"
                    if main_pfn.get(pn) == fork_pfn[pn]:
                        child_written.append(pn)
                key = "%s | %s" % (label or "anon", kind)
                cats[key] = cats.get(key, 0) + 1
        # what the child wrote into the pages it copied (original = main's page, untouched by main since the fork)
        buckets = {"1-2 words": 0, "3-8": 0, "9-64": 0, ">64": 0}
        types = {}
        known = {}
        stack = [object]
        while stack:
            t = stack.pop()
            if id(t) in known:
                continue
            known[id(t)] = t.__name__
            try:
                stack.extend(t.__subclasses__())
            except TypeError:
                stack.extend(type.__subclasses__(t))
        fm = os.open("/proc/%d/mem" % main, os.O_RDONLY)
        sm = os.open("/proc/self/mem", os.O_RDONLY)
        sampled = 0
        try:
            for pn in child_written:
                try:
                    orig = os.pread(fm, _PAGE, pn * _PAGE)
                    mine = os.pread(sm, _PAGE, pn * _PAGE)
                except OSError:
                    continue
                if len(orig) != _PAGE or len(mine) != _PAGE:
                    continue
                sampled += 1
                o = _struct.unpack("512Q", orig)
                m = _struct.unpack("512Q", mine)
                diff = [i for i in range(512) if o[i] != m[i]]
                n = len(diff)
                buckets["1-2 words" if n <= 2 else "3-8" if n <= 8 else "9-64" if n <= 64 else ">64"] += 1
                if n <= 8:
                    for i in diff:
                        # ob_refcnt at word i -> ob_type at i+1
                        t = m[i + 1] if i + 1 < 512 else None
                        name = known.get(t)
                        if name is not None and abs(m[i] - o[i]) < 1 << 20:
                            types[name] = types.get(name, 0) + 1
                        else:
                            types["?"] = types.get("?", 0) + 1
        finally:
            os.close(fm)
            os.close(sm)
        top = sorted(types.items(), key=lambda kv: -kv[1])[:40]
        _log(
            "diag-%d" % me,
            _json.dumps(
                {
                    "pid": me,
                    "main": main,
                    "task": _diag_ntasks[0],
                    "uss_mb": uss / 1e6,
                    "pages_mb": {k: v * _PAGE / 1e6 for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
                    "child_copied_diffable": sampled,
                    "diff_buckets": buckets,
                    "refcnt_types": top,
                }
            )
            + "\n",
        )

    # ---- stages: pages the pool process has copied (PFN changed since its fork) / newly faulted, per stage ----
    _diag_state = {}

    def _diag_count():
        me = os.getpid()
        fork = _diag_state.get("fork")
        if fork is None:
            fork = _diag_state["fork"] = [
                (a, b, arr) for a, b, n, arr in _diag_load(os.path.join(_LOG_DIR, "diagfork-%d" % me))
            ]
        cur = _diag_pagemap(me, _diag_ranges(me))
        copied = new = 0
        mask = (1 << 55) - 1
        for a, b, name, arr in cur:
            overl = [(fa, fb, farr) for fa, fb, farr in fork if fa < b and fb > a]
            for k, e in enumerate(arr):
                if not e >> 63:
                    continue
                addr = a + k * _PAGE
                for fa, fb, farr in overl:
                    if fa <= addr < fb:
                        fe = farr[(addr - fa) // _PAGE]
                        if not fe >> 63:
                            new += 1
                        elif fe & mask != e & mask:
                            copied += 1
                        break
                else:
                    new += 1
        return copied, new

    def _diag_stage(name):
        if os.getpid() == _memseries_main_pid:
            return
        try:
            t = time.perf_counter()
            c, n = _diag_count()
            _log(
                "stage-%d" % os.getpid(),
                "%s %.2f %.2f %d %.3f %.3f\n"
                % (name, c * _PAGE / 1e6, n * _PAGE / 1e6, len(sys.modules), time.time(), time.perf_counter() - t),
            )
        except Exception as e:
            _log("diagerr-%d" % os.getpid(), "stage %s: %r\n" % (name, e))

    from celery.signals import task_prerun as _task_prerun, worker_process_init as _wpi
    from celery.signals import worker_before_create_process as _wbcp

    @_wbcp.connect(weak=False)
    def _diag_mainmods(**kwargs):
        _log("mainmods-%d" % os.getpid(), "\n".join(sorted(sys.modules)) + "\n--\n")

    @_wpi.connect(weak=False)
    def _diag_init(**kwargs):
        _diag_stage("init")
        os.register_at_fork(
            before=lambda: _diag_stage("pre-taskfork"), after_in_parent=lambda: _diag_stage("post-taskfork")
        )
        try:
            from airflow.executors.base_executor import BaseExecutor

            orig = BaseExecutor.run_workload

            def run_workload(*a, **k):
                sys.setprofile(None)
                _diag_stage("run_workload")
                _diag_wrap_sup()
                _diag_stage("after supervisor import")
                return orig(*a, **k)

            BaseExecutor.run_workload = staticmethod(run_workload)
        except Exception as e:
            _log("diagerr-%d" % os.getpid(), "wrap: %r\n" % (e,))

    def _diag_wrap_sup():
        try:
            import airflow.sdk.execution_time.supervisor as sup

            if getattr(sup, "_diag_wrapped", False):
                return  # once per process (run_workload calls this for every task)
            sup._diag_wrapped = True

            for fname in ("_configure_logging", "get_coordinator_manager", "ensure_secrets_backend_loaded"):
                f = getattr(sup, fname)

                def wrap(*a, __f=f, __n=fname, **k):
                    _diag_stage("before " + __n)
                    try:
                        return __f(*a, **k)
                    finally:
                        _diag_stage("after " + __n)

                setattr(sup, fname, wrap)
        except Exception as e:
            _log("diagerr-%d" % os.getpid(), "wrap: %r\n" % (e,))

    @_task_prerun.connect(weak=False)
    def _diag_prerun(**kwargs):
        _diag_stage("prerun")

    @_task_postrun.connect(weak=False)
    def _diag_postrun_stage(**kwargs):
        _diag_stage("postrun")
        _log("poolmods-%d" % os.getpid(), "\n".join(sorted(sys.modules)) + "\n")
        # gc: objects tracked per generation (frozen = inherited from the worker), full collections so far
        import gc as _gc

        _log(
            "gc-%d" % os.getpid(),
            "%d %d %d %d %d %s\n"
            % (
                len(_gc.get_objects(0)), len(_gc.get_objects(1)), len(_gc.get_objects(2)), _gc.get_freeze_count(),
                _uss(), ",".join(str(st["collections"]) for st in _gc.get_stats()),
            ),
        )

    # ---- where the child's init and first-task imports copy: profile a few celery/billiard functions, trace imports
    _DIAG_FUNCS = {
        "process_initializer", "setup", "finalize", "init_worker", "init_worker_process", "reset_state",
        "_bootstrap", "workloop", "set_mp_process_title", "setup_logging_subsystem", "after_fork",
        "_run_after_forkers", "run", "__call__", "_make_child_methods", "on_loop_start",
    }

    def _diag_prof(frame, event, arg):
        if event not in ("call", "return"):
            return
        code = frame.f_code
        if code.co_name not in _DIAG_FUNCS:
            return
        mod = frame.f_globals.get("__name__", "")
        if not mod.startswith(("celery", "billiard", "kombu")):
            return
        _diag_stage("%s %s.%s:%d" % (event, mod, code.co_name, code.co_firstlineno))

    def _diag_fork_prof():
        if os.getppid() == _memseries_main_pid:
            _diag_stage("fork-hook")
            sys.setprofile(_diag_prof)

    os.register_at_fork(after_in_child=_diag_fork_prof)

    import traceback as _tb

    class _DiagFinder:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name in ("airflow.models.dag", "croniter", "airflow.serialization.serialized_objects",
                        "airflow.sdk.execution_time.coordinator", "airflow.dag_processing.dagbag", "pycparser"):
                _log("imptrace-%d" % os.getpid(), "=== %s\n%s" % (name, "".join(_tb.format_stack(limit=30)[:-1])))
            return None

    @_wpi.connect(weak=False)
    def _diag_init2(**kwargs):
        sys.setprofile(None)
        sys.meta_path.insert(0, _DiagFinder)

    _DIAG_FUNCS2 = {
        "execute_workload", "validate_json", "store_result", "_store_result", "mark_as_started", "session_factory",
        "get_engine", "create_engine", "ResultSession", "_celery_task_logs_to_stdout_override", "getboolean",
        "get_execution_api_server_url", "connect", "commit", "_get_task_meta_for", "loader_task_init", "on_task_init",
        "prepare_models", "_update_result",
    }

    def _diag_prof2(frame, event, arg):
        if event not in ("call", "return"):
            return
        code = frame.f_code
        name = code.co_name
        mod = frame.f_globals.get("__name__", "")
        if name == "__init__" and mod == "pydantic.type_adapter":
            pass
        elif name not in _DIAG_FUNCS2 or not mod.startswith(("celery", "airflow", "pydantic", "sqlalchemy.engine.create", "sqlalchemy.orm.session", "kombu")):
            return
        if name == "connect" and not mod.startswith("sqlalchemy"):
            return
        _diag_stage("%s %s.%s:%d" % (event, mod, name, code.co_firstlineno))

    @_task_prerun.connect(weak=False)
    def _diag_prerun2(**kwargs):
        sys.setprofile(_diag_prof2)

    from celery.signals import task_postrun as _tpr2

    @_tpr2.connect(weak=False)
    def _diag_postrun2(**kwargs):
        sys.setprofile(None)
