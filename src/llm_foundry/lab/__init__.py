"""The Lab: a course in which a learner rebuilds this library, module by module.

Layout (one source per module generates every learner artifact)::

    lab/modules/NN_slug/     module.yaml, intro/task texts (en, zh), solution/ (the reference,
                             with solution markers), tests/ (visible and hidden)
    lab/module.py            reading a module, generating the learner's stub and the bug variants
    lab/sandbox/             running learner code in a real sandbox
    lab/testing.py           assertions whose failures teach (call, expected, actual, the learner's line)
"""
