"""The opening of a Python script that runs where glied's packages cannot be imported (a Hub user's machine):
the code a checkpoint carries for `trust_remote_code=True` must do without them."""

WITHOUT_GLIED = '''
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("modeling_glied", "processing"):
            raise ImportError("glied is not installed here: " + name)
sys.meta_path.insert(0, Block())
try:
    import modeling_glied
    raise SystemExit("the package was importable")
except ImportError:
    pass
'''
