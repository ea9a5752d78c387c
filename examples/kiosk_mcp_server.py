"""A small MCP server for a reception kiosk: opening hours, where rooms are, and today's events.

Run it over stdio (how the assistant starts it from `tools.mcp`):

    python examples/kiosk_mcp_server.py

or over streamable HTTP on 127.0.0.1 (the endpoint is http://127.0.0.1:PORT/mcp):

    python examples/kiosk_mcp_server.py --http 8000

A config entry for each:

    tools:
      mcp:
        - {name: kiosk, command: python, args: [examples/kiosk_mcp_server.py]}
        - {name: kiosk-http, url: http://127.0.0.1:8000/mcp}
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

Day = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "today", "tomorrow"]
WEEK = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]

HOURS: dict[str, tuple[str, str] | None] = {
    "monday": ("08:00", "18:00"),
    "tuesday": ("08:00", "18:00"),
    "wednesday": ("08:00", "18:00"),
    "thursday": ("08:00", "20:00"),
    "friday": ("08:00", "17:00"),
    "saturday": ("10:00", "14:00"),
    "sunday": None,
}

# name: (floor, directions)
ROOMS: dict[str, tuple[int, str]] = {
    "reception": (0, "right here, behind the kiosk"),
    "cafeteria": (0, "down the hall to the left, past the lifts"),
    "library": (1, "up the stairs, first door on the right"),
    "lecture hall a": (1, "up the stairs, at the end of the corridor"),
    "meeting room 2.14": (2, "take the lift to the second floor, then turn left"),
    "first aid": (0, "next to the main entrance, behind the green door"),
}

EVENTS: list[tuple[str, str, str]] = [  # (time, title, room)
    ("10:00", "Guided tour of the building", "reception"),
    ("12:30", "Lunch talk: robots at work", "cafeteria"),
    ("16:00", "Reading hour", "library"),
]


def build() -> MCPServer:
    """The kiosk's server with its tools; other scripts may add tools before running it."""
    server = MCPServer(
        "kiosk", log_level="WARNING", instructions="Facts about this building for visitors at the reception kiosk."
    )

    @server.tool()
    def opening_hours(day: Annotated[Day, Field(description='A weekday, "today" or "tomorrow".')] = "today") -> str:
        """When the building is open on a day."""
        name: str = day
        if day in ("today", "tomorrow"):
            name = WEEK[(dt.date.today().weekday() + (day == "tomorrow")) % 7]
        hours = HOURS[name]
        when = f"{day.capitalize()} ({name.capitalize()})" if name != day else name.capitalize()
        return f"{when}: closed." if hours is None else f"{when}: open from {hours[0]} to {hours[1]}."

    @server.tool()
    def find_room(name: Annotated[str, Field(description='The room, e.g. "library" or "meeting room 2.14".')]) -> str:
        """Where a room is in the building and how to get there."""
        key = name.strip().lower()
        if key not in ROOMS:
            close = difflib.get_close_matches(key, ROOMS, n=1, cutoff=0.5)
            if not close:
                raise ToolError(f"there is no room called {name!r}; rooms: {', '.join(sorted(ROOMS))}")
            key = close[0]
        floor, directions = ROOMS[key]
        level = "the ground floor" if floor == 0 else f"floor {floor}"
        return f"The {key} is on {level}: {directions}."

    @server.tool()
    def list_rooms() -> list[str]:
        """Every room the kiosk knows of."""
        return sorted(ROOMS)

    @server.tool()
    def events_today() -> str:
        """What happens in the building today, with times and rooms."""
        return "\n".join(f"{time} {title} ({room})" for time, title, room in EVENTS)

    return server


def main(server: MCPServer | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT/mcp")
    options = parser.parse_args()
    server = server or build()
    if options.http is None:
        server.run()
    else:
        server.run("streamable-http", host="127.0.0.1", port=options.http)


if __name__ == "__main__":
    main()
