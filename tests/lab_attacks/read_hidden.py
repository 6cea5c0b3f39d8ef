# Attack (token __TOKEN__): read a hidden path (after something beside it that is readable).
import os

visible = "__VISIBLE__"
try:
    print("visible:", open(visible).read() if os.path.isfile(visible) else os.listdir(visible))
except OSError as e:
    print("visible refused:", type(e).__name__)
try:
    with open("__PATH__") as f:
        print("hidden:", f.read())
except OSError as e:
    print("hidden refused:", type(e).__name__)
