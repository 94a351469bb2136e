"""The backends' jinja2 templates, shipped inside the wheel as ``dataplane.templates``."""
