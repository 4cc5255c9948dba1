"""ComfyUI's API-format workflow graphs as spotgen jobs (issue 30): the graph's contract, checked by the API before
anything is queued and by the worker again.

- ``nodes``: the core nodes spotgen runs, each with ComfyUI's inputs (types, defaults, ranges, choices) and
  outputs: the one table that the checks, ``/object_info`` and docs/comfyui.md's node table are made from;
- ``graph``: ``check_graph``, every check of a graph with ComfyUI's error shapes (``GraphError``);
- ``objectinfo``: ``GET /object_info``'s document from the table;
- ``inputs``: ``ComfyInputs``, the ``comfyui`` pipeline's inputs (the graph, its model names as catalog ids).
"""
