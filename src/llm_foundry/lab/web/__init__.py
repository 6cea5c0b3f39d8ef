"""`foundry lab web`: the whole course in the browser, served from this package (no CDN, offline).

    app.py        the FastAPI app: pages, the module actions (through the lab engine), the run stream
    accounts.py   classroom mode: local accounts (scrypt), sessions, CSRF tokens, the login rate limit
    store.py      the web's own SQLite: users, sessions, review requests and comments, discussion posts
    runs.py       the run queue: a fixed number of workers, a queue position, live output
    tools.py      editor services (jedi completion, ruff lint and format) and the similarity check
    charts.py     the metrics a module's tests print (LAB-METRIC lines), gathered for the charts
    static/       the built front end (web/lab/ at the repository root is its source; `npm run build`)

Single-user mode (the default on a loopback bind) uses the learner's own lab home, the one the
command line uses; classroom mode (``--classroom``, or any other bind) gives each account its own
lab home under ``$FOUNDRY_LAB_HOME/web/users/NAME/``, so workspaces and progress never mix.
The guide is docs/en/lab-web.md.
"""
