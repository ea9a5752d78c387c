from assistant.tts.server.cli import main

raise SystemExit(main())
