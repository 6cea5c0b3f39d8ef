"""The Lab: a course in which a learner rebuilds this library, module by module.

Layout (one source per module generates every learner artifact)::

    lab/modules/NN_slug/     module.yaml, intro/task texts (en, zh), solution/ (the reference,
                             with solution markers), tests/ (visible and hidden)
    lab/module.py            reading a module, generating the learner's stub and the bug variants
    lab/workspace.py         the learner's folder: writing it, reading their files, watching for saves
    lab/results.py           a test run: the run folder, the sandbox spec, results.json read and judged
    lab/runner.py            inside the sandbox: pytest with the plugin that writes results.json
    lab/sandbox/             running learner code in a real sandbox
    lab/progress.py          the learner's progress in SQLite: attempts, hints, reflections, unlocks
    lab/check.py             the authoring check of a module (`foundry lab check`)
    lab/testing.py           assertions whose failures teach (call, expected, actual, the learner's line)
    lab/text.py              the learner's language (en, zh)

The command line is ``cli/lab.py`` (`foundry lab ...`); the guide is docs/en/lab.md.
"""
