"""Rules: rules.yaml read into a typed schema, with every error located at file:line:col.

``schema`` holds the campaign model and its loading, ``conditions`` parses ``when:`` and
compiles it to SQL, ``durations`` reads ``30d``-style spans, ``yamlsource`` keeps the
positions that error messages point at.
"""
