"""A local admin token for ``make run`` (``recsys serve --local-admin-token``).

With no ``RECSYS_ADMIN_TOKEN`` set, the operator console at ``/admin/`` says "admin is
disabled": a first run on a laptop would never see it work. ``--local-admin-token`` then reads
the token from ``<instance>/admin_token``, creating it (32 random bytes, URL-safe, file mode
0600, created with that mode so it is never readable by others even for an instant) on the
first run, when it is printed once with the console's URL; later runs print only where it is.
A token set in the environment always wins, and nothing is written then.
"""

from __future__ import annotations

import os
import secrets

TOKEN_FILE = "admin_token"


def instance_path() -> str:
    """The instance folder the app will use (``RECSYS_INSTANCE_PATH``, else the one Flask finds
    for ``recsys.app``, as ``create_app`` does: ``instance/`` of a checkout, or
    ``<venv>/var/recsys.app-instance`` for an installed wheel, never site-packages).

    Returns
    -------
    str
        The folder (not created here).
    """
    from flask import Flask

    return os.environ.get("RECSYS_INSTANCE_PATH") or Flask("recsys.app").instance_path


def ensure_token(folder: str) -> tuple[str, bool]:
    """The local admin token in ``folder``, created (mode 0600) when absent.

    Parameters
    ----------
    folder : str
        The instance folder (created when missing).

    Returns
    -------
    (str, bool)
        The token, and whether it was created now.

    Raises
    ------
    OSError
        The file cannot be read or written.
    """
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, TOKEN_FILE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path, encoding="ascii") as f:
            token = f.read().strip()
        if token:
            return token, False
        os.chmod(path, 0o600)
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
    return token, True


def console_url(gunicorn_args: tuple[str, ...]) -> str:
    """The console's URL for the address gunicorn will listen on.

    Parameters
    ----------
    gunicorn_args : tuple of str
        ``recsys serve``'s extra arguments (``--bind HOST:PORT`` / ``-b`` / ``--bind=``).

    Returns
    -------
    str
        ``http://HOST:PORT/admin/`` (``RECSYS_BIND`` or 127.0.0.1:8000 without ``--bind``).
    """
    bind = os.environ.get("RECSYS_BIND", "127.0.0.1:8000")
    args = list(gunicorn_args)
    for i, arg in enumerate(args):
        if arg in ("--bind", "-b") and i + 1 < len(args):
            bind = args[i + 1]
        elif arg.startswith("--bind="):
            bind = arg.split("=", 1)[1]
    host, _, port = bind.rpartition(":")
    if host in ("0.0.0.0", "", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}/admin/"


def apply(gunicorn_args: tuple[str, ...], echo) -> None:
    """Put the local token in ``RECSYS_ADMIN_TOKEN`` for the server unless one is set; say
    where the console is.

    Parameters
    ----------
    gunicorn_args : tuple of str
        ``recsys serve``'s extra arguments (for the console's URL).
    echo : Callable[[str], None]
        Where the lines go (``click.echo``).

    Returns
    -------
    None
    """
    url = console_url(gunicorn_args)
    if os.environ.get("RECSYS_ADMIN_TOKEN"):
        echo(f"console: {url} (admin token: RECSYS_ADMIN_TOKEN)")
        return
    folder = instance_path()
    token, created = ensure_token(folder)
    os.environ["RECSYS_ADMIN_TOKEN"] = token
    path = os.path.join(folder, TOKEN_FILE)
    if created:
        echo(f"console: {url}\nadmin token (created, shown once; kept in {path}, mode 0600):")
        echo(f"    {token}")
    else:
        echo(f"console: {url} (admin token in {path})")
