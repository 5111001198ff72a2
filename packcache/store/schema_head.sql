-- Generated from migrations/ by `python -m tests.test_migrations`: do not edit. The schema
-- a person edits is packcache/store/schema.py; a change to it is a new migration.

CREATE TABLE alembic_version (
	version_num VARCHAR(32) NOT NULL, 
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

CREATE TABLE layers (
	id INTEGER NOT NULL, 
	diff_id TEXT NOT NULL, 
	size INTEGER, 
	blob_digest TEXT, 
	blob_size INTEGER, 
	compression TEXT, 
	first_seen FLOAT NOT NULL, 
	last_access FLOAT, 
	access_count INTEGER DEFAULT '0' NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (diff_id), 
	UNIQUE (blob_digest)
);

CREATE INDEX ix_layers_last_access ON layers (last_access);

CREATE TABLE layer_digests (
	digest TEXT NOT NULL, 
	layer_key INTEGER NOT NULL, 
	media_type TEXT, 
	size INTEGER NOT NULL, 
	PRIMARY KEY (digest), 
	FOREIGN KEY(layer_key) REFERENCES layers (id) ON DELETE CASCADE
);

CREATE INDEX ix_layer_digests_layer_key ON layer_digests (layer_key);

CREATE TABLE images (
	id INTEGER NOT NULL, 
	config_digest TEXT NOT NULL, 
	config TEXT NOT NULL, 
	os TEXT, 
	architecture TEXT, 
	variant TEXT, 
	created TEXT, 
	first_seen FLOAT NOT NULL, 
	last_seen FLOAT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (config_digest)
);

CREATE TABLE image_layers (
	image_key INTEGER NOT NULL, 
	position INTEGER NOT NULL, 
	layer_key INTEGER NOT NULL, 
	PRIMARY KEY (image_key, position), 
	FOREIGN KEY(image_key) REFERENCES images (id) ON DELETE CASCADE, 
	FOREIGN KEY(layer_key) REFERENCES layers (id)
)
 WITHOUT ROWID

;

CREATE UNIQUE INDEX ix_image_layers_layer_key ON image_layers (layer_key, image_key);

CREATE TABLE image_sources (
	image_key INTEGER NOT NULL, 
	engine TEXT NOT NULL, 
	image_id TEXT NOT NULL, 
	manifest_digest TEXT, 
	manifest TEXT, 
	last_seen FLOAT NOT NULL, 
	PRIMARY KEY (image_key, engine), 
	FOREIGN KEY(image_key) REFERENCES images (id) ON DELETE CASCADE
);

CREATE INDEX ix_image_sources_image_id ON image_sources (image_id);

CREATE TABLE image_refs (
	engine TEXT NOT NULL, 
	ref TEXT NOT NULL, 
	image_key INTEGER NOT NULL, 
	PRIMARY KEY (engine, ref), 
	FOREIGN KEY(image_key) REFERENCES images (id) ON DELETE CASCADE
);

CREATE INDEX ix_image_refs_ref ON image_refs (ref);

CREATE INDEX ix_image_refs_image_key ON image_refs (image_key);

CREATE TABLE leases (
	id INTEGER NOT NULL, 
	host TEXT NOT NULL, 
	pid INTEGER NOT NULL, 
	purpose TEXT NOT NULL, 
	created FLOAT NOT NULL, 
	expires FLOAT NOT NULL, 
	PRIMARY KEY (id)
);

CREATE TABLE lease_layers (
	lease_id INTEGER NOT NULL, 
	diff_id TEXT NOT NULL, 
	PRIMARY KEY (lease_id, diff_id), 
	FOREIGN KEY(lease_id) REFERENCES leases (id) ON DELETE CASCADE
);

CREATE INDEX ix_lease_layers_diff_id ON lease_layers (diff_id);

CREATE TABLE input_layers (
	"key" TEXT NOT NULL, 
	diff_id TEXT NOT NULL, 
	value TEXT NOT NULL, 
	recorded FLOAT NOT NULL, 
	PRIMARY KEY ("key")
);

