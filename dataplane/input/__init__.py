"""The input layer: manifest files read, validated like the API server does, built into the model.

* :mod:`.loader` reads files (YAML or JSON, multi-document, ``kind: List``) into documents,
  with :mod:`.fastyaml` and :mod:`.goyaml` reading YAML as the API server does;
  :mod:`.messages` shows values in messages.
* :mod:`.validation` holds the field rules and :class:`.validation.Checker`; :mod:`.service`,
  :mod:`.endpoints` (with its fast path, :mod:`.fastpath`), :mod:`.node` and
  :mod:`.proxy_config` build one kind each.
* :mod:`.cluster` assembles a :class:`~dataplane.model.Cluster` from the documents:
  :func:`~.cluster.load_cluster`, :func:`~.cluster.parse_cluster`, :class:`~.cluster.ParseResult`.
* Warnings about the user's input: :mod:`.fields` (unknown, misspelt fields, as the API server's
  field validation warns of them) and :mod:`.coverage` (Services the input leaves without endpoints).
"""
