"""The listing of config fields (--print_config): each field's value and its comment, read from
facekp/train/default_config.py, where every field is declared."""
import re

from facekp.core import cli
from facekp.train import config_rules
from facekp.train import default_config

_FIELD = re.compile(r"""^\s*(?:config\.(\w+)\s*=|"(\w+)":).*?(?:#\s*(.*))?$""")


def field_comments(path=None):
  """{field: comment} read from the default config's source: the comment on the field's line,
  else the comment lines just above it."""
  path = path or default_config.__file__
  comments, above, group, header = {}, [], "", False
  with open(path, encoding="utf-8") as f:
    for line in f:
      stripped = line.strip()
      if not stripped:  # a comment after a blank line heads a section, it describes no field
        above, header = [], True
        continue
      if stripped.startswith("#"):
        if not header:
          above.append(stripped.lstrip("# "))
        continue
      header = False
      match = _FIELD.match(line)
      if match and match.group(1):
        group = match.group(1) if "ConfigDict({" in line else ""
        comments[match.group(1)] = match.group(3) or " ".join(above)
      elif match and match.group(2) and group:
        comments[f"{group}.{match.group(2)}"] = match.group(3) or " ".join(above)
      above = []
  return comments


def listing(config):
  """Every field of `config` with its value and its comment from the default config."""
  comments = field_comments()
  lines = []
  for name, value in config_rules.flatten(cli.config_as_dict(config)).items():
    comment = comments.get(name, "")
    lines.append(f"{name} = {value!r}" + (f"  # {comment}" if comment else ""))
  return "\n".join(lines)
