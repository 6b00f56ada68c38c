"""A small kustomize renderer for the tests: exactly the features deploy/kustomize uses.

``kubectl kustomize`` is not available where the tests run, so this renders a kustomization
the way kustomize does for the subset we write, and refuses anything else (an unknown key in a
kustomization.yaml raises, so a manifest cannot silently use a feature rendered wrongly here):

- ``resources``: files (multi-document YAML) and directories holding a kustomization.yaml;
- ``patches`` with a ``path`` to a JSON 6902 patch (a YAML list of operations: add, remove,
  replace, test) and a ``target`` selecting by group, version, kind and name;
- ``images``: ``name`` matched against container images without tag or digest, replaced
  by ``newName``/``newTag``/``digest``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

__all__ = ["render", "apply_json6902", "PatchError"]

_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "images"}
_TARGET_KEYS = {"group", "version", "kind", "name"}
_IMAGE_KEYS = {"name", "newName", "newTag", "digest"}


class PatchError(ValueError):
    """A JSON 6902 operation that cannot apply (missing path, failed test, bad index)."""


def render(directory: str | Path) -> list[dict[str, Any]]:
    """The resources the kustomization in ``directory`` produces, in resource order."""
    directory = Path(directory)
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - _KUSTOMIZATION_KEYS
    if unknown:
        raise NotImplementedError(f"{directory}/kustomization.yaml uses {sorted(unknown)}, which this renderer does not support")
    docs: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            docs.extend(render(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    for patch in kustomization.get("patches", []):
        if set(patch) - {"path", "target"}:
            raise NotImplementedError(f"patch keys {sorted(set(patch) - {'path', 'target'})} are not supported")
        target = patch["target"]
        if set(target) - _TARGET_KEYS:
            raise NotImplementedError(f"patch target keys {sorted(set(target) - _TARGET_KEYS)} are not supported")
        operations = yaml.safe_load((directory / patch["path"]).read_text())
        if not isinstance(operations, list):
            raise NotImplementedError(f"{patch['path']}: only JSON 6902 patches (a list of operations) are supported")
        matched = [i for i, doc in enumerate(docs) if _selects(target, doc)]
        if not matched:
            raise PatchError(f"{patch['path']}: target {target} selects no resource")
        for i in matched:
            docs[i] = apply_json6902(docs[i], operations)
    for image in kustomization.get("images", []):
        if set(image) - _IMAGE_KEYS:
            raise NotImplementedError(f"image keys {sorted(set(image) - _IMAGE_KEYS)} are not supported")
        for doc in docs:
            _set_images(doc, image)
    return docs


def _selects(target: dict[str, str], doc: dict[str, Any]) -> bool:
    group, _, version = doc.get("apiVersion", "").rpartition("/")
    actual = {"group": group, "version": version, "kind": doc.get("kind"), "name": doc.get("metadata", {}).get("name")}
    return all(actual[k] == v for k, v in target.items())


def _image_name(image: str) -> str:
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def _set_images(doc: dict[str, Any], image: dict[str, str]) -> None:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        if _image_name(container["image"]) != image["name"]:
            continue
        new = image.get("newName", image["name"])
        if "digest" in image:
            new += "@" + image["digest"]
        elif "newTag" in image:
            new += ":" + str(image["newTag"])
        container["image"] = new


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for part in parts:
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise PatchError(f"{path}: no index {part!r} in a list of {len(node)}")
            node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node:
                raise PatchError(f"{path}: no member {part!r}")
            node = node[part]
        else:
            raise PatchError(f"{path}: cannot descend into a {type(node).__name__}")
    return node


def apply_json6902(doc: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """A patched copy of ``doc`` (RFC 6902 add, remove, replace, test)."""
    doc = copy.deepcopy(doc)
    for op in operations:
        kind, path = op["op"], op["path"]
        parts = _pointer(path)
        if not parts:
            raise PatchError("operations on the whole document are not supported")
        parent = _walk(doc, parts[:-1], path)
        last = parts[-1]
        if kind == "test":
            if _walk(doc, parts, path) != op["value"]:
                raise PatchError(f"test failed at {path}: {_walk(doc, parts, path)!r} != {op['value']!r}")
        elif kind == "add":
            value = copy.deepcopy(op["value"])
            if isinstance(parent, list):
                if last == "-":
                    parent.append(value)
                elif last.isdigit() and int(last) <= len(parent):
                    parent.insert(int(last), value)
                else:
                    raise PatchError(f"{path}: bad list index {last!r}")
            elif isinstance(parent, dict):
                parent[last] = value
            else:
                raise PatchError(f"{path}: cannot add into a {type(parent).__name__}")
        elif kind in ("remove", "replace"):
            _walk(doc, parts, path)  # must exist
            if isinstance(parent, list):
                index = int(last)
                if kind == "remove":
                    del parent[index]
                else:
                    parent[index] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[last]
            else:
                parent[last] = copy.deepcopy(op["value"])
        else:
            raise NotImplementedError(f"JSON 6902 op {kind!r} is not supported")
    return doc
