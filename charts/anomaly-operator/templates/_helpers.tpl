{{/*
The chart name, or nameOverride, cut to 63 characters (the Kubernetes label value limit).
*/}}
{{- define "anomaly-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of every object: fullnameOverride, or "<release>-<chart name>" unless the release
name already contains the chart name. Cut to 63 characters, so it is a valid DNS label and
stays the same for the same release name.
*/}}
{{- define "anomaly-operator.fullname" -}}
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

{{- define "anomaly-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: name and instance only, because a Deployment's selector cannot change
after it is created.
*/}}
{{- define "anomaly-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "anomaly-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "anomaly-operator.labels" -}}
helm.sh/chart: {{ include "anomaly-operator.chart" . }}
{{ include "anomaly-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: anomaly-pipeline
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "anomaly-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "anomaly-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: repository@digest when a digest is set, else repository:tag.
*/}}
{{- define "anomaly-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The processor image: settings.processorImage, or the operator's repository with
"anomaly-operator" replaced by "anomaly-processor" and the same tag.
*/}}
{{- define "anomaly-operator.processorImage" -}}
{{- if .Values.settings.processorImage }}
{{- .Values.settings.processorImage }}
{{- else }}
{{- printf "%s:%s" (.Values.image.repository | replace "anomaly-operator" "anomaly-processor") (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}
