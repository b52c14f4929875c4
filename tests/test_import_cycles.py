"""No cycles among the project's modules (beside import-linter's layers in `make lint`, which
allow cycles inside a layer): a module never imports, directly or not, one that imports it."""

import grimp

PACKAGES = ("infra_cli", "lab", "webhooks", "sensors", "infra_assets", "resources")


def cycles(graph, modules) -> list[list[str]]:
    """Each import cycle among `modules`, once, as the list of modules around it."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & modules) for m in modules}
    found, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in edges[module]:
            if state.get(imported) == "open":
                found.append(path[path.index(imported) :] + [imported])
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in sorted(modules):
        if module not in state:
            visit(module, [module])
    return found


def test_the_project_s_modules_import_each_other_in_no_cycle():
    graph = grimp.build_graph(*PACKAGES)
    assert cycles(graph, set(graph.modules)) == []


def test_a_cycle_is_found():
    class Graph:
        imports = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

        def find_modules_directly_imported_by(self, module):
            return self.imports[module]

    assert cycles(Graph(), {"a", "b", "c", "d"}) == [["a", "b", "c", "a"]]
