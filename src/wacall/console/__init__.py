"""The console: wacall's own web pages at ``/_wacall/console`` and the live stream they (and the CLI)
follow at ``/_wacall/stream``. See docs/console.md."""
