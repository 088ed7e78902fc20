# The server on its embedded default: SQLite index and blobs in the /data volume, with the viewer demo's
# WebAssembly decoder and the prebuilt OHIF viewer fetched from npm in a build stage.
#
# It listens on every interface, so it refuses to start (exit status 2) until access control is configured:
#   OpenID Connect:  docker run -p 8000:8000 -v dicomweb-data:/data \
#                      -e DICOMWEB_OIDC_ISSUER=https://id.example.org/realms/hospital \
#                      -e DICOMWEB_OIDC_AUDIENCE=dicomweb -e DICOMWEB_OHIF_OIDC_CLIENT_ID=ohif-viewer dicomweb
#   API keys:        docker run --rm -v dicomweb-data:/data dicomweb dicomweb apikey create gateway --scopes write
#                    (prints the key once), then docker run -p 8000:8000 -v dicomweb-data:/data dicomweb
#   TLS:             add -v /etc/dicomweb/tls:/tls:ro -e DICOMWEB_TLS_CERT=/tls/cert.pem -e DICOMWEB_TLS_KEY=/tls/key.pem
# (or terminate TLS in a reverse proxy). DICOMWEB_ALLOW_ANONYMOUS=1 serves without authentication, on purpose.
# The audit log (one JSON line per request touching patient data) goes to /data/audit/audit.jsonl; send the
# process SIGHUP (docker kill -s HUP) after rotating it.
FROM node:20-slim AS web
WORKDIR /web
COPY viewer-demo/package.json viewer-demo/package-lock.json ./
RUN npm ci --no-audit --no-fund \
    && npm pack @ohif/app@3.13.2 \
    && mkdir -p .ohif && tar -xzf ohif-app-*.tgz -C .ohif --strip-components=1 --exclude='*.map' package/dist \
    && rm ohif-app-*.tgz

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DICOMWEB_DATA=/data DICOMWEB_HOST=0.0.0.0 DICOMWEB_PORT=8000 DICOMWEB_VIEWER_DEMO_DIR=/app/viewer-demo \
    DICOMWEB_AUDIT_LOG=/data/audit/audit.jsonl

WORKDIR /app
COPY pyproject.toml README.md ./
COPY dicomweb ./dicomweb
COPY storage ./storage
COPY viewer-demo ./viewer-demo
COPY --from=web /web/node_modules ./viewer-demo/node_modules
COPY --from=web /web/.ohif ./viewer-demo/.ohif
# With the PostgreSQL and S3 extras, so one image serves the embedded default and the cluster of
# deploy/compose.yaml (DICOMWEB_DATABASE_URL, DICOMWEB_BLOB_URL and the AWS_* variables).
RUN pip install '.[postgres,s3]' \
    && useradd --system --uid 10001 --home-dir /data dicomweb \
    && mkdir -p /data && chown dicomweb /data

USER dicomweb
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os,ssl,sys,urllib.request; port = os.environ.get('DICOMWEB_PORT', '8000'); tls = bool(os.environ.get('DICOMWEB_TLS_CERT')); sys.exit(urllib.request.urlopen(f'{\"https\" if tls else \"http\"}://127.0.0.1:{port}/healthz', context=ssl._create_unverified_context() if tls else None).status != 200)"
CMD ["dicomweb", "serve"]
