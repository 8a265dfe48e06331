{{/* The producer's pod spec, shared by the Job and the CronJob: `dicomfleet submit SRC --out DEST`. */}}
{{- define "dicomfleet.producer.podSpec" -}}
serviceAccountName: {{ include "dicomfleet.serviceAccountName" . }}
automountServiceAccountToken: false
restartPolicy: Never
{{- with .Values.producer.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.producer.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.producer.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.producer.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- include "dicomfleet.podSecurityContext" . }}
containers:
  - name: producer
    image: {{ include "dicomfleet.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    args:
      - submit
      - {{ required "producer.source is required when the producer Job or CronJob is enabled" .Values.producer.source | quote }}
      - --out
      - {{ required "producer.out is required when the producer Job or CronJob is enabled" .Values.producer.out | quote }}
      {{- if .Values.producer.priority }}
      - --priority
      - {{ .Values.producer.priority | quote }}
      {{- end }}
      {{- with .Values.producer.extraArgs }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    envFrom:
      - configMapRef:
          name: {{ include "dicomfleet.fullname" . }}
    env:
      {{- include "dicomfleet.env" . | nindent 6 }}
    resources:
      {{- include "dicomfleet.withScratch" (dict "resources" .Values.producer.resources "scratch" (dict "sizeLimit" "1Gi" "medium" "")) | nindent 6 }}
    {{- include "dicomfleet.containerSecurityContext" . | nindent 4 }}
    volumeMounts:
      - name: scratch
        mountPath: /tmp
      - name: secrets
        mountPath: {{ include "dicomfleet.secretsDir" . }}
        readOnly: true
      {{- with .Values.extraVolumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  - name: scratch
    emptyDir:
      sizeLimit: 1Gi
  {{- include "dicomfleet.secretsVolume" . | nindent 2 }}
  {{- with .Values.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{- define "dicomfleet.producer.podMetadata" -}}
labels:
  {{- include "dicomfleet.labels" (dict "ctx" $ "component" "producer") | nindent 2 }}
  {{- with .Values.producer.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  {{- include "dicomfleet.checksums" . | nindent 2 }}
  {{- with .Values.producer.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* submit's own verdicts end the Job: 1 (a file it could not read, a job that failed) and 3 (JPEGs
below the SSIM threshold) come back the same on a retry; 2 may be Redis or S3 not answering yet. */}}
{{- define "dicomfleet.producer.failurePolicy" -}}
podFailurePolicy:
  rules:
    - action: FailJob
      onExitCodes:
        containerName: producer
        operator: In
        values: [1, 3]
{{- end -}}
