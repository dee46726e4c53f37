{{/*
The chart name, or nameOverride, cut to 63 characters (the Kubernetes label value limit).
*/}}
{{- define "anomaly-processor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of every object: fullnameOverride, or "<release>-<chart name>" unless the release
name already contains the chart name. Cut to 63 characters, so it is a valid DNS label and
stays the same for the same release name.
*/}}
{{- define "anomaly-processor.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "anomaly-processor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: name and instance only, because a Deployment's selector cannot change
after it is created.
*/}}
{{- define "anomaly-processor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "anomaly-processor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "anomaly-processor.labels" -}}
helm.sh/chart: {{ include "anomaly-processor.chart" . }}
{{ include "anomaly-processor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: processor
app.kubernetes.io/part-of: anomaly-pipeline
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "anomaly-processor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "anomaly-processor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: repository@digest when a digest is set, else repository:tag.
*/}}
{{- define "anomaly-processor.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}
