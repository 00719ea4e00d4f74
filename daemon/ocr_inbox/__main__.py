from ocr_inbox.cli import main

raise SystemExit(main())
