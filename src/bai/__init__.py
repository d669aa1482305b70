"""bai: an open compute-session platform (manager, agent, kernel runner and the backend.ai CLI).

The package's top also holds what the ``backend.ai`` program does first
(``packaging/bin/backend.ai``): ``cli()`` loads the CLI's entry module with ``lean_import``,
without importlib's search, and runs it. Importing ``bai`` costs anything else only these two
functions' byte code (~90,000 instructions).
"""

from __future__ import annotations  # the runner imports bai under Python 3.8 too

__version__ = "0.1.0"

#: the modules ``lean_import`` loaded itself (the others went through ``importlib``)
LEAN_LOADED: list[str] = []


def lean_import(names: tuple[str, ...]) -> None:
    """Import ``names`` (submodules of packages already imported, each after the modules it
    imports) as ``importlib`` would, without its search: a module's byte code is read from
    the ``__pycache__`` file next to its source when that file is the source's (the
    timestamp and size it records), which is what ``importlib`` checks too.

    ``importlib`` costs ~190,000 instructions a module above loading its byte code (a search
    through ``sys.meta_path`` and the parent's path, locks, specs, half a dozen ``stat``), the
    ``backend.ai start`` call's ~13 modules as many as compiling a 40-line script. Anything
    else (no byte code yet or a stale one, a hash-based one, a package not on plain files, a
    module already imported) takes the ordinary import, which also writes the byte code.
    Import hooks on ``sys.meta_path`` are not asked about these modules."""
    import _imp
    import marshal
    import os
    import sys
    from _frozen_importlib import ModuleSpec
    from _frozen_importlib_external import MAGIC_NUMBER, SourceFileLoader, cache_from_source
    from _io import FileIO

    modules = sys.modules
    tag = sys.implementation.cache_tag
    # importlib's cache_from_source in the usual case (~15,000 instructions a call)
    plain = tag is not None and sys.pycache_prefix is None and not sys.flags.optimize
    for name in names:
        if name in modules:
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = modules.get(parent_name)
        spec = getattr(parent, "__spec__", None)
        if parent is None or type(getattr(spec, "loader", None)) is not SourceFileLoader \
                or len(parent.__path__) != 1:
            __import__(name)
            continue
        folder = f"{parent.__path__[0]}/{leaf}"
        # a package first, as importlib (asked with access: a missing file raises nothing)
        if os.access(folder + "/__init__.py", os.F_OK):
            path, package, base = folder + "/__init__.py", [folder], folder + "/__init__"
        else:
            path, package, base = folder + ".py", None, folder
        try:
            st = os.stat(path)
            if plain:
                head, _, stem = base.rpartition("/")
                cached = f"{head}/__pycache__/{stem}.{tag}.pyc"
            else:
                cached = cache_from_source(path)
            with FileIO(cached) as f:
                data = f.readall()
        except (OSError, ValueError, NotImplementedError):
            data = b""
        # importlib's check of a timestamp-based file (a hash-based one holds its source's
        # hash where the time would be: importlib then reads it)
        if (data[:4] != MAGIC_NUMBER
                or data[8:12] != (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
                or data[12:16] != (st.st_size & 0xFFFFFFFF).to_bytes(4, "little")):
            __import__(name)
            continue
        code = marshal.loads(memoryview(data)[16:])
        _imp._fix_co_filename(code, path)
        loader = SourceFileLoader(name, path)
        spec = ModuleSpec(name, loader, origin=path, is_package=package is not None)
        spec.has_location = True
        spec.cached = cached
        module = type(sys)(name)
        module.__spec__, module.__loader__, module.__file__, module.__cached__ = \
            spec, loader, path, cached
        module.__package__ = name if package is not None else parent_name
        if package is not None:
            module.__path__ = spec.submodule_search_locations = package
        modules[name] = module
        try:
            exec(code, module.__dict__)
        except BaseException:
            modules.pop(name, None)
            raise
        setattr(parent, leaf, module)
        LEAN_LOADED.append(name)


def cli() -> None:
    """The ``backend.ai`` and ``bai`` programs: ``bai.client.cli.main.main()``, the packages
    on the way loaded by ``lean_import`` (through importlib ~250,000 instructions each)."""
    lean_import(("bai.client", "bai.client.cli", "bai.client.cli.main"))
    from bai.client.cli.main import main

    main()
