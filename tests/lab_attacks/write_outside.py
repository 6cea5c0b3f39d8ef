# Attack (token __TOKEN__): write, append and delete in a world-writable folder outside the workspace.
import os

folder = "__TARGET__"


def attempt(what, action):
    try:
        action()
        print(what, "done")
    except OSError as e:
        print(what, "refused:", type(e).__name__)


attempt("new file", lambda: open(os.path.join(folder, "new.txt"), "w").write("x"))
attempt("append", lambda: open(os.path.join(folder, "keep.txt"), "a").write("x"))
attempt("delete", lambda: os.unlink(os.path.join(folder, "keep.txt")))
with open("inside.txt", "w") as f:
    f.write("inside")
