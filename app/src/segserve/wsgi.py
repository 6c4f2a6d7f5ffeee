"""What uWSGI loads: `--module segserve.wsgi:app`."""

from segserve import create_app

app = create_app()
