"""The console: wacall's pages for people (calls, users, the browser phone)."""
