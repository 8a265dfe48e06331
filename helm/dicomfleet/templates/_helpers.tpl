{{/* Names, labels and the settings every fleet pod reads (shared/settings.py). */}}

{{- define "dicomfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* At most 43 characters: the longest names append "-worker-metrics" (63 in all, a Service's
limit) and the CronJob's "-producer" (52, as Kubernetes appends 11 to the Jobs it makes). */}}
{{- define "dicomfleet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 43 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 43 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 43 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dicomfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels; call with (dict "ctx" $ "component" "worker"). */}}
{{- define "dicomfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dicomfleet.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Standard labels; call with (dict "ctx" $ "component" "worker"). */}}
{{- define "dicomfleet.labels" -}}
helm.sh/chart: {{ include "dicomfleet.chart" .ctx }}
{{ include "dicomfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: dicomfleet
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "dicomfleet.annotations" -}}
{{- with .Values.commonAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "dicomfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dicomfleet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dicomfleet.image" -}}
{{- $repo := .Values.image.repository -}}
{{- if .Values.image.registry -}}{{- $repo = printf "%s/%s" .Values.image.registry $repo -}}{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Redis: the bundled evaluation server or the external one (the production default). */}}
{{- define "dicomfleet.redis.host" -}}
{{- if .Values.redis.enabled -}}
{{- printf "%s-redis" (include "dicomfleet.fullname" .) -}}
{{- else -}}
{{- required "externalRedis.host is required (or set redis.enabled=true for an evaluation Redis)" .Values.externalRedis.host -}}
{{- end -}}
{{- end -}}

{{- define "dicomfleet.redis.port" -}}
{{- if .Values.redis.enabled -}}6379{{- else -}}{{- .Values.externalRedis.port -}}{{- end -}}
{{- end -}}

{{- define "dicomfleet.redis.database" -}}
{{- if .Values.redis.enabled -}}0{{- else -}}{{- .Values.externalRedis.database -}}{{- end -}}
{{- end -}}

{{- define "dicomfleet.redis.tls" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.tls -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{/* The Secret holding the Redis password, or "" when Redis needs none. */}}
{{- define "dicomfleet.redis.passwordSecret" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.existingSecret -}}
{{- .Values.externalRedis.existingSecret -}}
{{- else if and (not .Values.redis.enabled) .Values.externalRedis.password -}}
{{- include "dicomfleet.fullname" . -}}
{{- end -}}
{{- end -}}

{{- define "dicomfleet.redis.passwordKey" -}}
{{- if .Values.externalRedis.existingSecret -}}{{- .Values.externalRedis.existingSecretPasswordKey -}}{{- else -}}redis-password{{- end -}}
{{- end -}}

{{/* redis[s]://host:port/db; the password is a mounted file (DICOMFLEET_REDIS_PASSWORD_FILE) that
the code puts into the URL percent-encoded, never the pod spec's environment. */}}
{{- define "dicomfleet.redis.url" -}}
{{- $scheme := ternary "rediss" "redis" (eq (include "dicomfleet.redis.tls" .) "true") -}}
{{- printf "%s://%s:%s/%s" $scheme (include "dicomfleet.redis.host" .) (include "dicomfleet.redis.port" .) (include "dicomfleet.redis.database" .) -}}
{{- end -}}

{{/* S3: the bundled evaluation MinIO or the external endpoint. */}}
{{- define "dicomfleet.s3.endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "%s-minio:9000" (include "dicomfleet.fullname" .) -}}
{{- else -}}
{{- .Values.s3.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "dicomfleet.s3.secure" -}}
{{- if .Values.minio.enabled -}}false{{- else -}}{{- .Values.s3.secure -}}{{- end -}}
{{- end -}}

{{- define "dicomfleet.s3.secretName" -}}
{{- default (include "dicomfleet.fullname" .) .Values.s3.existingSecret -}}
{{- end -}}

{{- define "dicomfleet.deid.secretName" -}}
{{- default (include "dicomfleet.fullname" .) .Values.deid.existingSecret -}}
{{- end -}}

{{/* True when the chart itself must create its Secret (any credential not from an existingSecret). */}}
{{- define "dicomfleet.createSecret" -}}
{{- if or (not .Values.s3.existingSecret) (not .Values.deid.existingSecret) (and (not .Values.redis.enabled) .Values.externalRedis.password (not .Values.externalRedis.existingSecret)) -}}true{{- end -}}
{{- end -}}

{{/* A value kept across upgrades: the live Secret's, else the given one, else a random one. */}}
{{- define "dicomfleet.secretValue" -}}
{{- $live := lookup "v1" "Secret" .ctx.Release.Namespace (include "dicomfleet.fullname" .ctx) -}}
{{- if .value -}}
{{- .value -}}
{{- else if and $live (hasKey $live.data .key) -}}
{{- index $live.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum .length -}}
{{- end -}}
{{- end -}}

{{- define "dicomfleet.secretsDir" -}}/var/run/secrets/dicomfleet{{- end -}}

{{/*
The environment of every fleet container. Non-secret settings come from the ConfigMap (envFrom);
the Redis URL is composed here; secrets are files named by DICOMFLEET_<NAME>_FILE.
*/}}
{{- define "dicomfleet.env" -}}
{{- if ne (include "dicomfleet.redis.passwordSecret" .) "" }}
- name: DICOMFLEET_REDIS_PASSWORD_FILE
  value: {{ include "dicomfleet.secretsDir" . }}/redis-password
{{- end }}
- name: DICOMFLEET_BROKER_URL
  value: {{ include "dicomfleet.redis.url" . | quote }}
- name: DICOMFLEET_RESULT_BACKEND
  value: {{ include "dicomfleet.redis.url" . | quote }}
- name: DICOMFLEET_S3_ACCESS_KEY_FILE
  value: {{ include "dicomfleet.secretsDir" . }}/s3-access-key
- name: DICOMFLEET_S3_SECRET_KEY_FILE
  value: {{ include "dicomfleet.secretsDir" . }}/s3-secret-key
- name: DICOMFLEET_DEID_KEY_FILE
  value: {{ include "dicomfleet.secretsDir" . }}/deid-key
- name: PROMETHEUS_MULTIPROC_DIR
  value: /tmp/dicomfleet-metrics
- name: TMPDIR
  value: /tmp
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The secret files, projected read-only into one directory. */}}
{{- define "dicomfleet.secretsVolume" -}}
- name: secrets
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ include "dicomfleet.s3.secretName" . }}
          items:
            - key: {{ ternary .Values.s3.existingSecretAccessKeyKey "s3-access-key" (ne .Values.s3.existingSecret "") }}
              path: s3-access-key
            - key: {{ ternary .Values.s3.existingSecretSecretKeyKey "s3-secret-key" (ne .Values.s3.existingSecret "") }}
              path: s3-secret-key
      - secret:
          name: {{ include "dicomfleet.deid.secretName" . }}
          items:
            - key: {{ ternary .Values.deid.existingSecretKey "deid-key" (ne .Values.deid.existingSecret "") }}
              path: deid-key
{{- if ne (include "dicomfleet.redis.passwordSecret" .) "" }}
      - secret:
          name: {{ include "dicomfleet.redis.passwordSecret" . }}
          items:
            - key: {{ include "dicomfleet.redis.passwordKey" . }}
              path: redis-password
{{- end }}
{{- end -}}

{{/* Pod-level restricted security context. */}}
{{- define "dicomfleet.podSecurityContext" -}}
{{- if .Values.podSecurityContext.enabled }}
securityContext:
  {{- omit .Values.podSecurityContext "enabled" | toYaml | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "dicomfleet.containerSecurityContext" -}}
{{- if .Values.containerSecurityContext.enabled }}
securityContext:
  {{- omit .Values.containerSecurityContext "enabled" | toYaml | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Annotations that roll the pods when the settings or the chart's Secret change. */}}
{{- define "dicomfleet.checksums" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if include "dicomfleet.createSecret" . }}
checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end -}}

{{/* Queues the workers consume, the real-time one first (the order they are drained in). */}}
{{- define "dicomfleet.queues" -}}
{{- list .Values.config.queueHigh .Values.config.queue | toJson -}}
{{- end -}}

{{/* The autoscaler in use: keda, hpa or none ("auto" asks the cluster for KEDA's CRD). */}}
{{- define "dicomfleet.autoscaling.engine" -}}
{{- $engine := .Values.autoscaling.engine -}}
{{- if not (has $engine (list "auto" "keda" "hpa" "none")) -}}
{{- fail (printf "autoscaling.engine must be auto, keda, hpa or none, got %q" $engine) -}}
{{- end -}}
{{- if eq $engine "auto" -}}
{{- ternary "keda" "hpa" (.Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject") -}}
{{- else -}}
{{- $engine -}}
{{- end -}}
{{- end -}}

{{/* The Prometheus job label of the workers' targets (set by the ServiceMonitor/PodMonitor relabelling). */}}
{{- define "dicomfleet.metrics.job" -}}
{{- include "dicomfleet.fullname" . }}-worker
{{- end -}}

{{- define "dicomfleet.metrics.relabelings" -}}
- action: replace
  targetLabel: job
  replacement: {{ include "dicomfleet.metrics.job" . }}
- action: replace
  sourceLabels: [__meta_kubernetes_pod_name]
  targetLabel: pod
{{- end -}}

{{/* A container's resources with its disk scratch (an emptyDir on the node's disk) requested and
limited as ephemeral-storage, unless the values set it: the scheduler counts it, and a node under
disk pressure evicts what asked for none first. A Memory scratch counts against memory instead. */}}
{{- define "dicomfleet.withScratch" -}}
{{- $res := deepCopy (default (dict) .resources) -}}
{{- if not .scratch.medium -}}
{{- $size := dict "ephemeral-storage" (toString .scratch.sizeLimit) -}}
{{- $_ := set $res "requests" (merge (deepCopy (default (dict) $res.requests)) $size) -}}
{{- $_ := set $res "limits" (merge (deepCopy (default (dict) $res.limits)) (deepCopy $size)) -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}
