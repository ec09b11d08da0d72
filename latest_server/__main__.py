from latest_server.cli import main

raise SystemExit(main())
