"""Versioned schema migrations for the node database.

Each entry is ``(version, sql)``; ``PRAGMA user_version`` records the last one applied.
Append new migrations at the end, never edit an applied one.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE admins (
            id INTEGER PRIMARY KEY,
            username TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            created_at REAL NOT NULL,
            failed_logins INTEGER NOT NULL DEFAULT 0,
            locked_until REAL NOT NULL DEFAULT 0
        );
        CREATE TABLE web_sessions (
            token_hash TEXT PRIMARY KEY,
            admin_id INTEGER NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
            csrf_token TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL
        );
        CREATE TABLE api_accounts (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            client_id TEXT NOT NULL UNIQUE,
            secret_hash TEXT NOT NULL,
            permissions TEXT NOT NULL,
            created_at REAL NOT NULL,
            revoked_at REAL
        );
        CREATE TABLE api_tokens (
            token_hash TEXT PRIMARY KEY,
            account_id INTEGER NOT NULL REFERENCES api_accounts(id) ON DELETE CASCADE,
            expires_at REAL NOT NULL
        );
        CREATE TABLE settings (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        CREATE TABLE status_history (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            status INTEGER NOT NULL,
            message TEXT NOT NULL
        );
        CREATE TABLE config_documents (
            revision INTEGER PRIMARY KEY,
            document TEXT NOT NULL,
            created_at REAL NOT NULL,
            author TEXT NOT NULL DEFAULT ''
        );
        """,
    ),
    (
        2,
        # Cluster data sync (atlas.store.config_store, atlas.node.sync): what kind of change
        # each configuration revision was, and what each traffic node acknowledged.
        """
        ALTER TABLE config_documents ADD COLUMN kind TEXT NOT NULL DEFAULT 'edit';
        ALTER TABLE config_documents ADD COLUMN subject TEXT;
        CREATE TABLE node_status (
            name TEXT PRIMARY KEY,
            guid TEXT,
            reported_name TEXT,
            version TEXT,
            acked_revision INTEGER NOT NULL DEFAULT 0,
            accepting_revision INTEGER NOT NULL DEFAULT 0,
            last_sync_at REAL,
            last_sync_status INTEGER,
            last_error_reason TEXT,
            last_error TEXT
        );
        """,
    ),
    (
        3,
        # Representative accounts (/login -> Users & Security; atlas user create).
        """
        CREATE TABLE representatives (
            id INTEGER PRIMARY KEY,
            username TEXT NOT NULL UNIQUE COLLATE NOCASE,
            display_name TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            enabled INTEGER NOT NULL DEFAULT 1,
            created_at REAL NOT NULL,
            failed_logins INTEGER NOT NULL DEFAULT 0,
            locked_until REAL NOT NULL DEFAULT 0
        );
        """,
    ),
    (
        4,
        # Accounts in data sync (atlas.store.account_sync): the digest of the account sets
        # each traffic node acknowledged (NULL: none recorded, taken as no accounts).
        """
        ALTER TABLE node_status ADD COLUMN acked_accounts_digest TEXT;
        """,
    ),
]
