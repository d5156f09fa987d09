FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY protos ./protos
COPY service ./service
COPY model_repository ./model_repository
# The milvus extra: the same image serves --index-backend milvus (the scale-out profile).
RUN pip install --no-cache-dir ".[milvus]"
VOLUME /data
EXPOSE 50051
CMD ["neardup", "serve", "--host=0.0.0.0", "--data-dir=/data"]
